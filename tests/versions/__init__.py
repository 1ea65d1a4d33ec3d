"""Two versions of the same services, deployed one after the other in
tests/test_versions.py: ``v1`` and ``v2`` define ``pinned`` (pin_version=True) and ``loose``
with the same names; v2 renames some steps, which only pinning or a replay check saves."""

#: How long every handler here sleeps between its two steps: long enough for the test to
#: deploy v2 and stop v1 meanwhile.
NAP = 6.0
