"""Screenshots in headless Chromium over the DevTools protocol, every connection through a guarding proxy."""
