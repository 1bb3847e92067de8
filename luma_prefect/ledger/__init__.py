"""The ledger of paid generations kept in the destination, and the claims that let exactly
one sweep deliver each of them.
"""
