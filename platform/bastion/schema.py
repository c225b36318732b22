"""Every table of both kinds of database, in one place.

Tables are declared next to the domain that owns them; importing this module
registers all of them on the two MetaData objects the migrations (and the drift
check) compare against: `region_metadata` (each region's database) and
`control_metadata` (the control database).
"""

from __future__ import annotations

import bastion.analytics.tables
import bastion.audit.tables
import bastion.automation.tables
import bastion.bulk.tables
import bastion.crypto.tables
import bastion.dsr.tables
import bastion.policy.tables
import bastion.quality.tables  # noqa: F401 - registers its tables
from bastion.crm.tables import region_metadata
from bastion.principals.tables import control_metadata

__all__ = ["control_metadata", "region_metadata"]
