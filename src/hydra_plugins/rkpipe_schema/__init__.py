"""Hydra plugin that makes rkpipe's typed schema visible to every Hydra composition.

DVC's Hydra mode composes ``conf/`` in its own process; it loads the
``hydra_plugins`` namespace first, so registering the schema here lets
``conf/config.yaml`` name ``rkpipe_schema`` in its defaults wherever it is composed.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from rkpipe.config.registration import register_configs

register_configs()


class RkpipeSchemaPlugin(SearchPathPlugin):
    """Adds nothing to the search path; importing this module registers the schema."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        return None
