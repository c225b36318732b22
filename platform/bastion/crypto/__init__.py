"""Field-level encryption: envelope format, key providers, per-subject keys, blind indexes.

- `envelope`: `FieldContext`, `DataKey`, `seal` / `unseal` / `key_id_of` / `reseal`
  (AES-256-GCM, AAD bound to region, table, record id and field);
- `keyring`: `Keyring` (on `State.keys`): a data subject's DEK (`dek_for_subject`,
  `dek_by_id`, `rotate_dek`, `retire_dek`, `shred`) and blind indexes; the work is
  done in `datakeys` (DEKs, and the DEK rotation window), `regionkeys` (region
  keys, blind indexers, KEK choice) and `cache` (unwrapped DEKs per process);
- `providers` / `hsm`: the `KeyProvider` protocol, the `local` (files, development)
  and `pkcs11` (HSM) providers of each region's versioned KEKs; `cryptoki`: the
  PKCS#11 login python-pkcs11 lacks;
- `rotation`: online, resumable KEK rotation, KEK status and retirement;
- `blindindex`, `normalize`: truncated per-field HMACs of normalised values;
- `tables`, `repository`: the region database's key tables and their SQL;
- `errors`: `DecryptionFailed` (500), `KeyDestroyed` (410), `KeyServiceUnavailable`
  (503), `KeyConfigurationError` (500), `KeyInUse` (409), `UnindexableValue` (422).

Nothing is re-exported here: `bastion.config` imports `bastion.crypto.settings`, so
this package must stay import-light.
"""
