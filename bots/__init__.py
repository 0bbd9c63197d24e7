"""Retouch's Telegram bot (front end 2). It reaches the core only through ``tools.service``'s
Editor, ``tools.models``, ``tools.config`` and ``tools.chats``.

    telegram.py   Application builder, handler registration, life cycle, webhook mode
    handlers.py   edits from photos, albums and replies; commands; buttons; error handler
    captions.py   caption → function, prompt and parameters (pure)
    albums.py     collects an album's separate updates into one edit
    delivery.py   status messages and exactly-once delivery of results
    access.py     allow-list gate (every update) and per-user limits
    retry.py      429 / network retries for every Bot API call
    state.py      the running state shared by the handlers
    __main__.py   ``retouch-bot`` / ``python -m bots``
"""
