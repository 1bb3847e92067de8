"""Delivering a finished generation: download its files (streamed, hashed, resumable) and
publish them (manifest, Prefect artifacts and events).
"""
