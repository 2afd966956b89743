"""Notification channel admins."""
