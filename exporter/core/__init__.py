"""What every part shares: settings, the database, bearer checks, server limits, bundled files."""
