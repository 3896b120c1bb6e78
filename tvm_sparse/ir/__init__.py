"""The neutral layer every other subpackage may import: layer specs and Relax helpers.

``ir`` imports nothing from ``passes``, ``schedules`` or ``codegen``, so those three can share
what they all need (what a layer is, how to read a Relax function) without importing each other.
"""
