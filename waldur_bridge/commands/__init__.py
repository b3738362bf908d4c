"""Bot commands: room commands in portals (room.py) and admin commands (admin.py).

Importing `room` and `admin` registers their handlers with mautrix; `__main__` does that.
"""
