"""A storage filesystem for tests (task `storage.filesystem: tests.data.storage_fs:make`): a
folder given by AUTOTUNER_TEST_STORAGE, reached through pyarrow as an object store would be (not as
a local path), so trials upload their files instead of writing them in place."""

import os

from pyarrow.fs import LocalFileSystem, SubTreeFileSystem


def make() -> SubTreeFileSystem:
    return SubTreeFileSystem(os.environ["AUTOTUNER_TEST_STORAGE"], LocalFileSystem())
