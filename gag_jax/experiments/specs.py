"""Method specifications: one ``MethodSpec`` per row of the paper's Tables 1, 2 and 3.

A spec names a row (``name``, file-system safe, used for results on disk and on the command
line), its display ``label`` in the tables, the ``gj.explain`` method and options, and whether
the map is post-processed by ``gj.reverse`` (the "R" rows of Table 2).

Names:

* Table 1: ``gag-0``, ``gag-15``, ``gag-25``, ..., ``gag-85``: Guided AbsoluteGrad with
  ``percentile = p / 100`` (the name carries p in percent, the option the fraction; ``gag-0`` is
  AbsoluteGrad: ``G = 1``).
* Table 2: ``gradcam``; ``gag``, ``ag``, ``vargrad``, ``sg``, ``ig``, ``gb``, ``guided_ig``,
  ``blur_ig``, ``vg``; reversed ``sg_r``, ``ig_r``, ``gb_r``, ``guided_ig_r``, ``blur_ig_r``.
* Table 3: the originals ``sg``, ``ig``, ``guided_ig``, ``blur_ig``, ``gb`` and their variants
  ``<base>.pos`` (+), ``<base>.neg`` (-), ``<base>.abs`` (A), ``<base>.guide`` (G) and
  ``<base>.guide_abs`` (GA).

Any ``gag-<p>``, ``<method>_r`` and ``<method>.<variant>`` is accepted by :func:`parse_methods`,
not only the ones in the tables.
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from gag_jax import user_code
from gag_jax.explainers import METHOD_RECORDS, METHODS, as_method

TABLE1_PERCENTS: tuple[int, ...] = (0, 15, 25, 35, 45, 55, 65, 75, 85)
"""The p values (percent) of Table 1's rows GAG-0 ... GAG-85."""

def label_of(method: str) -> str:
    """Display label of a method: its record's (``gj.Method.label``, the paper's abbreviations for its
    methods; a user's method its name or the label it was registered with)."""
    return METHOD_RECORDS[method].label if method in METHOD_RECORDS else method


TABLE3_BASES: tuple[str, ...] = ("sg", "ig", "guided_ig", "blur_ig", "gb")
"""The methods whose gradient-processing variants Table 3 averages."""

# variant suffix -> (Table 3 row label, options added to the base method)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "pos": ("+", {"interpretation": "positive"}),
    "neg": ("\u2212", {"interpretation": "negative"}),
    "abs": ("A", {"interpretation": "absolute"}),
    "guide": ("G", {"guide": True}),
    "guide_abs": ("GA", {"guide": True, "interpretation": "absolute"}),
}
"""Table 3's gradient-processing variants: ``+``, ``-``, ``A``, ``G``, ``GA``."""

TABLE2_ORDER: tuple[str, ...] = ("gradcam", "gag", "ag", "vargrad", "sg", "ig", "gb", "guided_ig", "blur_ig", "vg")
"""Table 2 parts 1-2 in the paper's row order (AG, i.e. GAG-0, added after GAG)."""

TABLE2_REVERSED: tuple[str, ...] = ("sg", "ig", "gb", "guided_ig", "blur_ig")
"""The methods whose reversed "R" variants make Table 2 part 3."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One table row: how to compute its saliency maps.

    Attributes:
      name: unique, file-system safe identifier (``"gag-85"``, ``"sg_r"``, ``"ig.guide_abs"``).
      label: display label in the tables (``"GAG-85"``, ``"SG^R"``, ``"GA"``).
      method: a ``gj.PRESETS`` entry passed to ``gj.explain``.
      options: method options for ``gj.explain`` (on top of ``gj.DEFAULTS[method]``).
      reverse: post-process the map with ``gj.reverse`` (Table 2 part 3).
      part: the table part the row belongs to (Table 2: 1 Grad-CAM, 2 gradient methods,
        3 reversed variants; 1 elsewhere).
      base: for a Table 3 variant, the ``name`` of its original method; else None.
      variant: for a Table 3 variant, its row label (``"+"``, ``"\u2212"``, ``"A"``, ``"G"``,
        ``"GA"``); else None.
    """

    name: str
    label: str
    method: str
    options: tuple[tuple[str, Any], ...] = ()
    reverse: bool = False
    part: int = 1
    base: str | None = None
    variant: str | None = None

    def explain_options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The keyword options for ``gj.explain``: the spec's own, then ``overrides``.

        Only overrides the method accepts are applied (e.g. ``n`` and ``chunk_size`` do not
        reach ``gradcam``), so one set of command-line overrides serves every row.

        Args:
          overrides: e.g. ``{"n": 8, "chunk_size": 4}``.

        Returns:
          dict of options.
        """
        options = dict(self.options)
        for key, value in (overrides or {}).items():
            if value is not None and key in as_method(self.method).defaults:
                options[key] = value
        return options

    @property
    def seed_salt(self) -> int:
        """A stable 31-bit integer derived from ``name`` (folded into the PRNG key of this row)."""
        return zlib.crc32(self.name.encode()) & 0x7FFFFFFF

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description (stored in the run manifest; a user's method with its source)."""
        source = METHOD_RECORDS[self.method].source if self.method in METHOD_RECORDS else None
        return {"name": self.name, "label": self.label, "method": self.method, "options": dict(self.options),
                "reverse": self.reverse, "part": self.part, "base": self.base, "variant": self.variant,
                **({"source": dict(source)} if source else {})}


def _opts(**options) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def gag_spec(percent: float) -> MethodSpec:
    """GAG-p: Guided AbsoluteGrad with ``percentile = percent / 100`` (``percent`` in [0, 100))."""
    percent = float(percent)
    if not 0.0 <= percent < 100.0:
        raise ValueError(f"GAG-p needs 0 <= p < 100 (p in percent); got {percent:g}")
    text = f"{percent:g}"
    return MethodSpec(name=f"gag-{text}", label=f"GAG-{text}", method="gag",
                      options=_opts(percentile=round(percent / 100.0, 10)))


def base_spec(method: str, part: int = 2) -> MethodSpec:
    """The plain row of one ``gj.PRESETS`` entry (paper defaults; occlusion, RISE and XRAI beyond the paper)."""
    if method not in METHOD_RECORDS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHOD_RECORDS)}")
    return MethodSpec(name=method, label=label_of(method), method=method, part=1 if method == "gradcam" else part)


def reversed_spec(method: str) -> MethodSpec:
    """The reversed "R" row of a method (Table 2 part 3): its map passed through ``gj.reverse``."""
    base = base_spec(method)
    return dataclasses.replace(base, name=f"{method}_r", label=f"{base.label}^R", reverse=True, part=3)


def variant_spec(method: str, variant: str) -> MethodSpec:
    """A Table 3 gradient-processing variant of ``method`` (``variant`` a key of :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if method not in METHOD_RECORDS or "interpretation" not in METHOD_RECORDS[method].defaults:
        with_interpretation = [m for m in METHODS if "interpretation" in METHOD_RECORDS[m].defaults]
        raise ValueError(f"method {method!r} has no gradient-processing variants; "
                         f"methods with variants: {', '.join(with_interpretation)}")
    row, options = VARIANTS[variant]
    return MethodSpec(name=f"{method}.{variant}", label=row, method=method, options=_opts(**options),
                      base=method, variant=row)


def table1_specs() -> list[MethodSpec]:
    """Table 1's rows: GAG-0, GAG-15, GAG-25, ..., GAG-85."""
    return [gag_spec(p) for p in TABLE1_PERCENTS]


def table2_specs() -> list[MethodSpec]:
    """Table 2's rows: Grad-CAM (part 1), the gradient methods incl. AG and GAG (part 2), the
    reversed variants SG^R, IG^R, GB^R, Guided IG^R, BlurIG^R (part 3)."""
    return [base_spec(m) for m in TABLE2_ORDER] + [reversed_spec(m) for m in TABLE2_REVERSED]


def table3_specs() -> list[MethodSpec]:
    """Table 3's inputs: the five original methods and their +, -, A, G, GA variants (30 rows)."""
    originals = [base_spec(m) for m in TABLE3_BASES]
    variants = [variant_spec(m, v) for v in VARIANTS for m in TABLE3_BASES]
    return originals + variants


def table_specs(table: int) -> list[MethodSpec]:
    """The specs of Table ``table`` (1, 2 or 3)."""
    if table == 1:
        return table1_specs()
    if table == 2:
        return table2_specs()
    if table == 3:
        return table3_specs()
    raise ValueError(f"unknown table {table!r}; expected 1, 2 or 3")


_GAG_P = re.compile(r"^gag-(\d+(?:\.\d+)?)$")


def spec_from_name(name: str) -> MethodSpec:
    """Parse one row name (see the module docstring) into its spec.

    Raises:
      ValueError: an unknown name, with the accepted forms listed.
    """
    if user_code.is_reference(name):  # module:attribute: the user's method, registered under the attribute
        return base_spec(user_code.user_method(name.strip()))
    text = name.strip().lower()
    match = _GAG_P.match(text)
    if match:
        return gag_spec(float(match.group(1)))
    if text in METHOD_RECORDS or name.strip() in METHOD_RECORDS:
        return base_spec(text if text in METHOD_RECORDS else name.strip())
    if text.endswith("_r") and text[:-2] in METHOD_RECORDS:
        return reversed_spec(text[:-2])
    if "." in text:
        method, variant = text.split(".", 1)
        if method in METHODS:
            return variant_spec(method, variant)
    raise ValueError(
        f"unknown method {name!r}; expected one of {', '.join(METHOD_RECORDS)}, gag-<p> (p in percent, e.g. gag-85), "
        f"<method>_r (reversed, e.g. sg_r), <method>.<variant> with variant in {', '.join(VARIANTS)} "
        "(e.g. ig.guide_abs) or module:attribute (a method of your own)")


def parse_methods(names: Sequence[str] | str | None, table: int | None = None) -> list[MethodSpec]:
    """Specs for a list of row names (comma-separated strings allowed); ``None``: the table's rows.

    Table 3 needs each variant's original: they are added when missing.

    Args:
      names: row names, e.g. ``["gag", "sg_r", "gag-45"]`` or ``"gag,sg"``; None for all rows of
        ``table``.
      table: 1, 2, 3 or None.

    Returns:
      the specs, duplicates removed, in the given order.

    Raises:
      ValueError: unknown name, or ``names`` and ``table`` both None.
    """
    if names is None:
        if table is None:
            raise ValueError("give method names or a table number")
        return table_specs(table)
    if isinstance(names, str):
        names = [names]
    flat = [part for n in names for part in str(n).split(",") if part.strip()]
    specs: list[MethodSpec] = []
    seen: set[str] = set()
    for n in flat:
        spec = spec_from_name(n)
        if spec.name not in seen:
            specs.append(spec)
            seen.add(spec.name)
    if table == 3:
        for spec in list(specs):
            if spec.base is not None and spec.base not in seen:
                specs.insert(0, base_spec(spec.base))
                seen.add(spec.base)
    return specs


def specs_for(tables: Sequence[int] | int = (2,), methods: Sequence[str] | str | None = None) -> list[MethodSpec]:
    """The rows an evaluation computes: the named ``methods`` (with each Table 3 variant's original
    when Table 3 is asked for), or else every row of ``tables``, duplicates removed.

    Args:
      tables: table numbers (1, 2, 3) or one of them.
      methods: row names (see :func:`parse_methods`) or None.

    Returns:
      specs in order: the given names, or the tables' rows table by table.

    Raises:
      ValueError: an unknown table or method name.
    """
    tables = [tables] if isinstance(tables, int) else list(tables)
    if methods:
        return parse_methods(methods, 3 if 3 in tables else None)
    specs: dict[str, MethodSpec] = {}
    for t in tables:
        for spec in table_specs(t):
            specs.setdefault(spec.name, spec)
    return list(specs.values())


def rows_for_table(table: int, specs: Sequence[MethodSpec]) -> list[MethodSpec]:
    """The specs that make the rows of ``table`` among those computed, in the paper's row order.

    Table 1: the ``gag-<p>`` rows by p (else every plain row); Table 2: the paper's rows in its
    order, then other plain rows in the order given; Table 3: the originals and their variants.

    Args:
      table: 1, 2 or 3.
      specs: the computed specs.

    Returns:
      the rows (possibly empty).
    """
    if table == 3:
        return [s for s in specs if s.base is not None or s.name in TABLE3_BASES]
    if table == 1:
        rows = sorted((s for s in specs if s.method == "gag" and s.name.startswith("gag-")),
                      key=lambda s: float(s.name.split("-", 1)[1]))
        return rows or [s for s in specs if s.base is None]
    if table != 2:
        raise ValueError(f"unknown table {table!r}; expected 1, 2 or 3")
    order = [s.name for s in table2_specs()]
    rows = sorted((s for s in specs if s.name in order), key=lambda s: order.index(s.name))
    rows += [s for s in specs if s.name not in order and s.base is None and not s.name.startswith("gag-")]
    return rows or [s for s in specs if s.base is None]


def input_scaling(mean, std) -> dict[str, tuple[float, ...]]:
    """``{"mean": ..., "std": ...}`` as method options: the methods that build a baseline in pixel space
    (IG's and Guided IG's black image, occlusion's baselines) take the data's input scaling from them;
    ``MethodSpec.explain_options`` passes them only to the methods that have these options."""
    return {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}
