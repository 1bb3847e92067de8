"""Waiting for generations: one batched poll loop for many ids, with an injectable clock."""
