"""chargesight.sim."""
