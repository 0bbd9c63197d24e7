"""The store's contract suite: every backend runs these tests unchanged.

A backend plugs in with one factory in ``conftest.py``: ``STORES`` (task stores) or
``BLOB_STORES`` (blob stores). Tests that only one backend can run (its pragmas, its
migrations table, its files) stay in ``tests/test_store.py``.
"""
