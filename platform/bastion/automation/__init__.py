"""CRM automation: workflow rules, lead scoring, activity events and signed webhooks.

Automation is a principal like any other (`system:automation`, the policy's
`automation` role): what it reads and changes goes through the record pipeline —
policy, encryption, region pinning, audit — and its jobs live in the region of the
data they concern.
"""
