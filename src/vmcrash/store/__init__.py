"""The catalogue of crashes (SQLite, migrated schema)."""
