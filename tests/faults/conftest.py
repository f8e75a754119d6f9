"""Fixtures of the fault suite: a fleet of real `python -m mailjobs.job_runner` worker processes
(faults_tools.Fleet: output to files in tmp_path, all SIGKILLed at teardown, whatever happened)
sending as SENDER to the root conftest's `fake` Gmail.

Sizes and durations come from `faults_tools` (FAULTS_SCALE).
"""
from __future__ import annotations

import pytest
from faults_tools import Fleet


@pytest.fixture()
def fleet(database, dao, fake, tmp_path):
    fleet = Fleet(database, dao, fake, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
