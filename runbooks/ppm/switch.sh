#!/bin/sh
# Point the PPM+ application tier at one site: `switch.sh azure` or `switch.sh onprem`.
# Writes the site into the application's connection settings file and reloads the service.
# Needs PPM_APP_SETTINGS (path of the settings file) and PPM_RELOAD_CMD (e.g. "systemctl reload ppm").
set -eu
site="${1:?usage: switch.sh azure|onprem}"
case "$site" in azure|onprem) ;; *) echo "unknown site: $site" >&2; exit 2 ;; esac
: "${PPM_APP_SETTINGS:?set PPM_APP_SETTINGS}"
: "${PPM_RELOAD_CMD:?set PPM_RELOAD_CMD}"
tmp="$PPM_APP_SETTINGS.tmp"
sed "s/^database_site=.*/database_site=$site/" "$PPM_APP_SETTINGS" > "$tmp" && mv "$tmp" "$PPM_APP_SETTINGS"
$PPM_RELOAD_CMD
echo "PPM+ application now uses the $site database"
