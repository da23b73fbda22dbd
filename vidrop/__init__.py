"""vidrop: images and prompts dropped in a folder become videos.

Installed, the code lives under this one name: `vidrop.daemon`, `vidrop.pipeline`, `vidrop.config`. In the
repository those are the top-level folders daemon/, pipeline/ and config/; pyproject.toml maps them into this
package for the wheel and for `pip install -e .`, and the links beside this file do the same for a checkout on
PYTHONPATH.
"""
