"""The conformance suite: every scenario against every driver and option set.

The scenarios ship with the package (:mod:`graphdriver.testing.conformance`)
so that a third party's driver can run them too; here they run on every
driver this project registers, ``windowsfilter`` through its Windows-layer
builder.
"""

from graphdriver.testing.conformance import *  # noqa: F403  (the scenarios and their fixtures)
