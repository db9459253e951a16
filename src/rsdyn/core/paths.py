"""Where the workflow may write: every folder it writes or deletes in (``results_dir``,
``resources_dir``) and every name it builds paths from (runs, models) is checked at config
time, so that no job, and no cleanup of a failed job, reaches outside the project.

A relative folder must lie strictly inside the project folder (the working directory of
``snakemake``), outside the project's own code folders (``src``, ``workflow``, ...); an
absolute folder may lie anywhere except the file system's root, the project folder or a
folder above it. Paths are compared as written (``..`` resolved lexically), not through
symbolic links: ``resources`` may be a link to a shared folder of converted models.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rsdyn.core.schema import NAME_RULE, ConfigError

#: the pattern of every name that becomes a folder or file name (runs, models; the
#: schema's pattern of ``runs[].name`` and ``model.name``)
NAME_PATTERN = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]+$")

__all__ = ["NAME_PATTERN", "NAME_RULE", "PROJECT_FOLDERS", "check_folders", "folder_problem", "is_name"]

#: the project's own folders, never a place for outputs
PROJECT_FOLDERS = ("src", "workflow", "config", "tests", "docs", "benchmarks", "envs", ".git", ".snakemake")


def is_name(value: object) -> bool:
    """Whether ``value`` can be a folder or file name (:data:`NAME_PATTERN`)."""
    return isinstance(value, str) and NAME_PATTERN.match(value) is not None


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both absolute and normalised)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def folder_problem(value: str, project: str | os.PathLike) -> str | None:
    """Why ``value`` (``results_dir`` or ``resources_dir``) may not hold outputs (the end of a
    sentence), or None when it may."""
    project_path = os.path.normpath(os.path.abspath(project))
    roots = {project_path, os.path.realpath(project_path)}
    path = os.path.normpath(os.path.join(project_path, value))
    if path == os.path.normpath(Path(path).anchor):
        return "is the file system's root, which a failed job's cleanup could empty; give a folder such as results"
    if path in roots:
        return "is the project folder itself; give a folder inside it, such as results"
    if any(_inside(root, path) for root in roots):
        return "is a folder above the project folder, which a failed job's cleanup could empty; give a folder such as results"
    if not os.path.isabs(value) and not _inside(path, project_path):
        return "leads outside the project folder; give a folder inside it (such as results) or an absolute path elsewhere"
    for folder in PROJECT_FOLDERS:
        if any(_inside(path, os.path.join(root, folder)) for root in roots):
            return f"lies in the project's own folder {folder}/; give another folder, such as results"
    return None


def check_folders(config: dict, project: str | os.PathLike | None = None) -> None:
    """ConfigError unless ``results_dir`` and ``resources_dir`` of the (validated) config
    may hold outputs and neither lies inside the other."""
    project = Path.cwd() if project is None else Path(project)
    for key in ("results_dir", "resources_dir"):
        problem = folder_problem(config[key], project)
        if problem:
            raise ConfigError(f"Invalid config: {key} = {config[key]!r} {problem}.")
    results, resources = (os.path.normpath(os.path.join(os.path.abspath(project), config[k])) for k in ("results_dir", "resources_dir"))
    if _inside(results, resources) or _inside(resources, results):
        raise ConfigError(
            f"Invalid config: results_dir = {config['results_dir']!r} and resources_dir = {config['resources_dir']!r} "
            "overlap; give them two separate folders."
        )
