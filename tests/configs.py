"""A :class:`Configuration` around a test's network, for tests that build networks or run them
without a planned dataset (the fields a network and a sliding window do not read get fixed values)."""

from __future__ import annotations

from autoseg.planning.plan import Configuration, Network, Resampling


def configuration(
    kind: str, network: Network, patch: tuple[int, ...], *, in_slices: int = 1, name: str | None = None
) -> Configuration:
    """``kind``'s configuration (``"3d"``, ``"2d"``, ``"2.5d"``) of ``network`` at ``patch``."""
    return Configuration(
        name=name or f"test_{kind}",
        kind=kind,  # type: ignore[arg-type]
        spacing=(1.0, 1.0, 1.0),
        median_shape=(32, 32, 32),
        patch_size=patch,
        batch_size=2,
        in_slices=in_slices,
        network=network,
        resampling=Resampling(),
        batch_dice=False,
        estimated_feature_elements=0,
    )
