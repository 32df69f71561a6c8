"""The composition root: builds every service once, hands each part the few it needs, and runs them under one
root nursery (daemon.py); start-up failures explained (explain.py), logging (logs.py), systemd (systemd.py)."""
