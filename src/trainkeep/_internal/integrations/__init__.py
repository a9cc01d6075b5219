"""Framework integrations: callbacks that report through ``trainkeep.report`` and honour the run's
``CheckpointConfig.checkpoint_frequency`` / ``checkpoint_at_end``. Each framework is an optional extra, imported
only when its integration is used."""
