"""The vocabulary every layer shares: errors and checks, names that become paths."""
