#!/bin/sh
# Start Mosquitto with the dynamic security plugin (deploy/mosquitto/mosquitto.conf, docs/mqtt.md).
#
# On the first start the plugin's file does not exist yet: create it with one admin account, the
# platform's own MQTT user (MQTT_USER / MQTT_PASSWORD, the same as in the app's MQTT_URL). Later
# starts keep the file, and with it every device account the platform made since; to change the
# admin's password then, use `mosquitto_ctrl ... dynsec setClientPassword`, never delete the file.
set -eu

DYNSEC_FILE=/mosquitto/data/dynamic-security.json

if [ ! -f "$DYNSEC_FILE" ]; then
    : "${MQTT_USER:?set MQTT_USER, the platform MQTT user}"
    : "${MQTT_PASSWORD:?set MQTT_PASSWORD, the platform MQTT password}"
    mosquitto_ctrl dynsec init "$DYNSEC_FILE" "$MQTT_USER" "$MQTT_PASSWORD" >/dev/null
    echo "entrypoint: created $DYNSEC_FILE with the admin user $MQTT_USER"
fi

# The image's own entrypoint gives /mosquitto to the mosquitto user (the broker drops root and
# must write its store and the plugin's file), then runs the command.
exec /docker-entrypoint.sh "$@"
