"""Between Scipion sets and the engine's files: micrograph links, exemplar and pick STAR files.

Micrographs are handed to the engine as links named ``mic_<objId>.mrc`` in a
folder of the run, so names are unique whatever the input files are called,
and picks come back as ``mic_<objId>_autopick.star``. Reading STAR files uses
the engine's own reader (starfile + pandas); nothing here imports torch.
"""
import os

from pwem.objects import Coordinate
import pyworkflow.object as pwobj

from .constants import RELION_ATTRS, SCORE_ATTR

MIC_TEMPLATE = "mic_%06d"


def micKey(mic):
    """The engine-side name (stem) of a Scipion micrograph."""
    return MIC_TEMPLATE % mic.getObjId()


def itemAt(items, position):
    """The item of a Scipion set at ``position`` (from 1, clamped to the set) in id order,
    as a copy: a set's iterator hands out one object, refilled for each item, so
    ``list(items)`` would hold the last item many times."""
    position = max(1, min(position, items.getSize()))
    for index, item in enumerate(items.iterItems(orderBy="id"), 1):
        if index == position:
            return item.clone()
    raise ValueError("The input set is empty.")


def linkMicrographs(mics, folder):
    """Link every micrograph into ``folder`` as ``mic_<objId>.mrc``; returns the link paths.

    The inputs are never touched; an existing link is replaced.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    for mic in mics:
        link = os.path.join(folder, micKey(mic) + ".mrc")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(mic.getFileName()), link)
        paths.append(link)
    return paths


def readJsonOrEmpty(path):
    """The dict a JSON file holds, or ``{}`` when there is no such file."""
    import json
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def listReasons(reasons, shown=3):
    """``{micrograph: reason}`` as one summary line: the first ``shown``, then '...'."""
    return "; ".join(f"{name}: {reason}" for name, reason in list(reasons.items())[:shown]) \
        + (" ..." if len(reasons) > shown else "")


def reasonsByMicrograph(reasons, mics):
    """The engine's ``{linked path: "path: reason"}`` (micrographs it could not read) as
    ``{micrograph file name: reason}`` for the micrographs ``mics`` that were linked."""
    if not reasons:
        return {}
    names = {micKey(mic): os.path.basename(mic.getFileName()) for mic in mics}
    return {names.get(os.path.splitext(os.path.basename(link))[0], link):
            reason.split(": ", 1)[-1] for link, reason in reasons.items()}


def summarisePickCounts(counts, pngPath, failed=0):
    """Draw the engine's figure of every picked micrograph's picks and cutoff to ``pngPath``
    and return the file names of those with unusually many or few picks.

    ``counts``: ``{micKey: {"name": file name, "picks": n, "cutoff": score}}`` in the order
    picked; ``failed``: how many micrographs could not be picked (named in the title).
    """
    from fewshotpicker.picking.plots import summarise_counts
    byName = {}
    for key, entry in counts.items():
        byName[key if entry["name"] in byName else entry["name"]] = entry
    return summarise_counts(byName, pngPath, failed)


def coordinateRows(coords, micsByName, scale=1.0):
    """``(objId, micKey, x, y)`` of every coordinate whose micrograph is in ``micsByName``.

    ``scale`` converts coordinates from the pixels of the micrographs they were
    picked on to those of the micrographs used here (their pixel-size ratio).
    """
    rows = []
    for coord in coords.iterItems():
        mic = micsByName.get(coord.getMicName())
        if mic is not None:
            rows.append((coord.getObjId(), micKey(mic), coord.getX() * scale,
                         coord.getY() * scale))
    return rows


def modelScale(modelRate, micRate):
    """Micrograph pixels per model pixel: the model's pixel size (Å) over the micrographs';
    1 when either is unknown or they lie within the engine's tolerance, where ``pick
    --pixel-size`` does not rescale either."""
    from fewshotpicker.io.mrc import pixel_size_mismatch
    return modelRate / micRate if pixel_size_mismatch(micRate, modelRate) else 1.0


def writeCoordinateStar(rows, folder, path):
    """Write ``coordinateRows`` as the engine reads them (micrograph paths under ``folder``),
    in the order given."""
    import pandas as pd
    from fewshotpicker.io.coordinates import write_coordinate_table
    table = pd.DataFrame({"micrograph": [os.path.join(folder, r[1] + ".mrc") for r in rows],
                          "x": [r[2] for r in rows], "y": [r[3] for r in rows]})
    write_coordinate_table(table, path)
    return path


def readPicks(starFile):
    """``[(x, y, score)]`` of one ``_autopick.star`` file (micrograph pixels)."""
    from fewshotpicker.io.coordinates import read_coordinates
    if not os.path.exists(starFile):
        return []
    table = read_coordinates(starFile)
    scores = table["score"] if "score" in table else [0.0] * len(table)
    return list(zip(table["x"], table["y"], scores))


def readPruneDecisions(scoresStar):
    """``[(probability, kept)]`` of the engine's ``scores.star``, in the order of its input."""
    from fewshotpicker.io.coordinates import read_coordinates
    table = read_coordinates(scoresStar)
    return [(float(p), int(c) == 1) for p, c in zip(table["score"], table["class"])]


def addPicks(coordSet, mic, picks):
    """Append picks to ``coordSet`` with the score and the RELION attributes set."""
    for x, y, score in picks:
        coord = Coordinate()
        coord.setMicrograph(mic)
        coord.setPosition(int(round(x)), int(round(y)))
        setattr(coord, SCORE_ATTR, pwobj.Float(score))
        classNumber, fom, psi = RELION_ATTRS
        setattr(coord, classNumber, pwobj.Integer(0))
        setattr(coord, fom, pwobj.Float(score))
        setattr(coord, psi, pwobj.Float(-999.0))
        coordSet.append(coord)


def tomoKey(tomo):
    """The engine-side name (stem) of a Scipion tomogram."""
    return "tomo_%06d" % tomo.getObjId()


def writeTomoLabels(coords, tomosByTsId, path):
    """Write 3D labels (voxels from the tomogram's first voxel, RELION 4 columns) for the
    coordinates whose tomogram is in ``tomosByTsId``; returns how many were written.

    When every such coordinate carries a group id of 1 or more, it is written as the
    species (``rlnClassNumber``), so one run picks several species."""
    import pandas as pd
    from tomo.constants import BOTTOM_LEFT_CORNER
    from fewshotpicker.io.coordinates import write_coordinate_table
    rows = []
    for coord in coords.iterItems():
        tomo = tomosByTsId.get(coord.getTomoId())
        if tomo is not None:
            coord.setVolume(tomo)
            x, y, z = coord.getPosition(BOTTOM_LEFT_CORNER)
            rows.append((tomoKey(tomo), x, y, z, coord.getGroupId()))
    table = pd.DataFrame(rows, columns=["micrograph", "x", "y", "z", "class"])
    species = pd.to_numeric(table["class"], errors="coerce")
    if len(table) and species.notna().all() and (species >= 1).all():
        table["class"] = species.astype(int)
    else:
        table = table.drop(columns="class")
    write_coordinate_table(table, path)
    return len(rows)


def readTomoPicks(starFile):
    """``{tomogram key: [(x, y, z, score, class)]}`` of the engine's RELION 4 3D picks."""
    from fewshotpicker.io.coordinates import read_coordinates
    table = read_coordinates(starFile)
    out = {}
    for name, x, y, z, score, klass in zip(table["micrograph"], table["x"], table["y"],
                                           table["z"], table["score"], table["class"]):
        out.setdefault(str(name), []).append((x, y, z, float(score), int(klass)))
    return out
