#!/bin/sh
# One-shot initialisation of the demo userli, run in a container of the userli image:
# - its public/ directory into the userli-public volume, for the nginx container (every start,
#   so that a newer userli image brings its new assets);
# - once: database schema, the "basic" sample data (users on example.org and example.com,
#   password "password") and an API token with the postfix scope, written where the adapter
#   reads it (USERLI_TOKEN_FILE). A later `docker compose up` changes nothing of that.
set -eu
cp -a /var/www/html/public/. /srv/userli-public/

token_file=/run/userli-token/token
if [ -s "$token_file" ]; then
    echo "userli is already initialised"
    exit 0
fi
bin/console doctrine:migrations:migrate --no-interaction
bin/console doctrine:fixtures:load --group=basic --append --no-interaction
token=$(bin/console app:api-token:create --no-ansi --name=postfix-adapter --scopes=postfix \
    | sed -n 's/^ *Token: *//p' | tr -d '[:space:]')
if [ -z "$token" ]; then
    echo "could not create an API token" >&2
    exit 1
fi
umask 022
printf '%s' "$token" > "$token_file.tmp"
mv "$token_file.tmp" "$token_file"
echo "userli initialised: sample users on example.org (password: password), API token written"
