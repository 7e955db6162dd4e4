"""A PEP 517 build backend of a few lines, so `pip install` of this package needs neither the network nor
the `wheel` package: a wheel is a zip of the module and its metadata, the entry point included."""

import base64
import hashlib
import os
import zipfile

NAME, VERSION, MODULE = "grun_testplug", "1.0", "grun_testplug.py"
DIST = f"{NAME}-{VERSION}.dist-info"
FILES = {
    f"{DIST}/METADATA": f"Metadata-Version: 2.1\nName: grun-testplug\nVersion: {VERSION}\n",
    f"{DIST}/WHEEL": "Wheel-Version: 1.0\nGenerator: _backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{DIST}/entry_points.txt": "[grun.plugins]\ntestplug = grun_testplug:LabPlugin\n",
}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), MODULE), "rb") as f:
        files = {MODULE: f.read(), **{path: text.encode() for path, text in FILES.items()}}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{DIST}/RECORD", "\n".join(record + [f"{DIST}/RECORD,,"]) + "\n")
    return name
