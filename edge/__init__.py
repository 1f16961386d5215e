"""chargesight.edge."""
