"""Alert admins."""
