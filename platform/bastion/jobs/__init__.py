"""Background jobs: leased rows in region databases, and the runner that works them."""
