"""The Dagster code location of the health intake platform."""
