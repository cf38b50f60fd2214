"""Contrast transfer function of the electron microscope (weak-phase approximation).

CTF(k) = -[sqrt(1 - A^2) sin(chi) + A cos(chi)] * exp(-B k^2 / 4), with
chi(k) = pi * lambda * df * k^2 - pi / 2 * Cs * lambda^3 * k^4, k in 1/Å,
underfocus ``df`` positive. With this sign, protein appears dark on a bright
background at low spatial frequency, as in real micrographs.
"""
from __future__ import annotations

import numpy as np


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def frequency_grid(shape: tuple, pixel_size: float) -> tuple:
    """Spatial frequencies (1/Å) of an ``rfftn`` of ``shape``: one array per axis, broadcastable."""
    axes = []
    for i, n in enumerate(shape):
        last = i == len(shape) - 1
        f = np.fft.rfftfreq(n, d=pixel_size) if last else np.fft.fftfreq(n, d=pixel_size)
        view = [1] * len(shape)
        view[i] = len(f)
        axes.append(f.reshape(view))
    return tuple(axes)


def ctf_2d(shape: tuple, pixel_size: float, defocus_u_A: float, defocus_v_A: float,
           astig_angle: float, voltage_kv: float = 300.0, cs_mm: float = 2.7,
           amplitude_contrast: float = 0.07, bfactor: float = 0.0) -> np.ndarray:
    """CTF on the ``rfft2`` grid of an ``(h, w)`` image, shape ``(h, w // 2 + 1)``.

    Defocus in Å (underfocus positive), astigmatism angle in radians from the x axis.
    """
    ky, kx = frequency_grid(shape, pixel_size)
    k2 = kx ** 2 + ky ** 2
    theta = np.arctan2(ky, kx)
    defocus = 0.5 * (defocus_u_A + defocus_v_A) \
        + 0.5 * (defocus_u_A - defocus_v_A) * np.cos(2.0 * (theta - astig_angle))
    lam = electron_wavelength(voltage_kv)
    cs = cs_mm * 1e7
    chi = np.pi * lam * defocus * k2 - 0.5 * np.pi * cs * lam ** 3 * k2 ** 2
    a = amplitude_contrast
    ctf = -(np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))
    return ctf * np.exp(-bfactor * k2 / 4.0)


def ctf_radial(shape: tuple, pixel_size: float, defocus_A: float, voltage_kv: float = 300.0,
               cs_mm: float = 2.7, amplitude_contrast: float = 0.07,
               bfactor: float = 0.0) -> np.ndarray:
    """Isotropic CTF on the ``rfftn`` grid of any shape (used for tomograms)."""
    grids = frequency_grid(shape, pixel_size)
    k2 = sum(g ** 2 for g in grids)
    lam = electron_wavelength(voltage_kv)
    chi = np.pi * lam * defocus_A * k2 - 0.5 * np.pi * cs_mm * 1e7 * lam ** 3 * k2 ** 2
    a = amplitude_contrast
    return -(np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi)) * np.exp(-bfactor * k2 / 4.0)


def apply_filter(image: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Multiply the real FFT of ``image`` by ``transfer`` and return the real result."""
    return np.fft.irfftn(np.fft.rfftn(image) * transfer, s=image.shape)
