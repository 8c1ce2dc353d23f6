"""Running: one point in, one result row out."""
