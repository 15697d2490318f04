"""The job file: one YAML document validated into typed settings.

:mod:`.schema` holds the blocks, :mod:`.loading` reads a file (YAML, ``--set`` overrides, errors as
one line), :mod:`.checks` the rules that span blocks. Every way a user can get a job wrong is a
:class:`ConfigError` naming the file, the dotted key and what was expected.
"""

from fedgrid.flow.config.errors import ConfigError
from fedgrid.flow.config.loading import apply_overrides, load_job, parse_job
from fedgrid.flow.config.schema import (
                                        CheckpointSpec,
                                        CompressionSpec,
                                        DataSpec,
                                        FaultSpec,
                                        Job,
                                        ModelSpec,
                                        PartitionSpec,
                                        PrivacySpec,
                                        RoundSpec,
                                        ScheduleSpec,
                                        SecAggSpec,
                                        SiteSpec,
                                        StoreSpec,
                                        TrainSpec,
)

__all__ = ["CheckpointSpec", "CompressionSpec", "ConfigError", "DataSpec", "FaultSpec", "Job", "ModelSpec",
           "PartitionSpec", "PrivacySpec", "RoundSpec", "ScheduleSpec", "SecAggSpec", "SiteSpec", "StoreSpec",
           "TrainSpec", "apply_overrides", "load_job", "parse_job"]
