"""chargesight.cli."""
