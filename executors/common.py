"""What every site kind shares: the options base class and the optional-package check.

A kind's module defines ``Spec`` (its YAML options, a pydantic model whose ``kind`` field is the
discriminator), ``build(site, run_dir, dry_run=False)`` returning an unstarted Parsl executor
labelled with the site's name, and ``describe(site)`` for `fedgrid check`. Modules import Parsl
and any optional package inside ``build``, so validating a job never needs a cloud SDK.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pydantic import BaseModel, ConfigDict


class SpecBase(BaseModel):
    """Options of one site kind; unknown keys are rejected with the list of valid ones."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MissingExtra(Exception):
    """A site kind needs a package that is not installed; the message names the pip extra."""

    def __init__(self, site: str, kind: str, package: str, extra: str):
        self.site, self.kind, self.package, self.extra = site, kind, package, extra
        super().__init__(f"site {site!r} (kind {kind}) needs the {package!r} package: "
                         f"pip install 'fedgrid[{extra}]'")


def require(module: str, *, site: str, kind: str, extra: str) -> ModuleType:
    """Import an optional package a site kind needs, or raise :class:`MissingExtra`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(site, kind, module.split(".")[0], extra) from None
