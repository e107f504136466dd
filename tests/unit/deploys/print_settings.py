"""A deploy file that only prints the host's settings, to test how the real
pyinfra CLI hands inventory data to govstack."""

import json

from pyinfra import host

from govstack.settings import settings_for_host

print("SETTINGS " + json.dumps(settings_for_host(host).model_dump(mode="json", exclude={"secrets"})))
