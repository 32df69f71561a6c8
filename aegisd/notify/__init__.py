"""Telling people and systems what happens: webhooks, Telegram, email, alerts, and each channel's health."""
