"""Notifications of handled crashes (webhooks); reads the catalogue, never imports capture/."""
