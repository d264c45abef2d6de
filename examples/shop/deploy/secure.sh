#!/bin/sh
# Generates the broker identities, ACLs and signing keys for a loom
# deployment (docs/security.md):
#
#   secure.sh DIR SHOP ENTRY...
#
# Each ENTRY is USER:IDENTITY:SERVICES[:CALLS], one per process (instance):
#   USER      its broker user name, which is also its --instance id
#             (mosquitto runs with use_username_as_clientid)
#   IDENTITY  its signing identity (instances of one service share one);
#             empty for an operator user that only makes bare calls
#   SERVICES  comma-separated services it runs, - for none, or * for a
#             user that may publish and subscribe anything (a test's or an
#             administrator's tool; no identity)
#   CALLS     comma-separated services whose commands it may call, - for
#             none, * (the default) for all
# e.g. shop-a:shop-a:users,orders,notifications:payments (payments checks orders)
#      pay-1:payments:payments:orders pay-2:payments:payments:orders bridge:bridge:-
#      operator::-:payments
#
# Writes into DIR (created; secrets mode 0600):
#   keys/IDENTITY.key   the identity's secret key (SHOP --keygen)
#   keyring             every identity's public key and services
#   USER.password       the user's broker password (broker.password_file)
#   passwd              the users' password hashes (mosquitto_passwd -U)
#   dynsec.json         mosquitto's dynamic security plugin configuration:
#                       one client and one role per user. Not an acl_file:
#                       mosquitto 2.0 checks an acl_file only when it
#                       delivers, so anyone could join a service's shared
#                       subscription and make the broker drop that
#                       service's commands (docs/security.md)
#   mosquitto-auth.conf the lines to add to a mosquitto configuration
#   nats-auth.conf      a nats-server authorization block
#   USER.yaml           the process's loom configuration (broker user,
#                       signing on, its key, the keyring)
# PREFIX (default loom) is the topic prefix.
set -euf

[ $# -ge 3 ] || {
    echo "usage: secure.sh DIR SHOP USER:IDENTITY:SERVICES[:CALLS]..." >&2
    exit 2
}
dir=$1
shop=$2
shift 2
prefix=${PREFIX:-loom}
umask 077
mkdir -p "$dir/keys"
: >"$dir/keyring"
: >"$dir/passwd"
nats_users=""
roles=""

for entry in "$@"; do
    user=${entry%%:*}
    rest=${entry#*:}
    identity=${rest%%:*}
    rest=${rest#*:}
    services=${rest%%:*}
    calls='*'
    [ "$rest" = "$services" ] || calls=${rest#*:}
    [ "$services" != "-" ] || services=""
    [ "$calls" != "-" ] || calls=""
    svc_words=$(echo "$services" | tr ',' ' ')
    call_words=$(echo "$calls" | tr ',' ' ')

    # the identity (once, however many instances share it)
    if [ -n "$identity" ] && [ ! -f "$dir/keys/$identity.key" ]; then
        line=$("$shop" --keygen "$identity" "$dir/keys/$identity.key")
        echo "$line ${svc_words:--}" >>"$dir/keyring"
    fi

    pass=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$pass" >"$dir/$user.password"
    printf '%s:%s\n' "$user" "$pass" >>"$dir/passwd"

    # mosquitto (dynamic security plugin): this user's role
    acl() { acls="${acls:+$acls,}{\"acltype\":\"$1\",\"topic\":\"$2\",\"allow\":true}"; }
    acls=""
    if [ "$services" = '*' ]; then
        acl publishClientSend '#'
        acl subscribePattern '#'
        acl subscribePattern '$share/+/#'
        roles="${roles:+$roles,
}    {\"rolename\": \"$user\", \"acls\": [$acls]}"
        nats_users="$nats_users
    {user: \"$user\", password: \"$pass\"}"
        continue
    fi
    acl subscribePattern "$prefix/reply/$user"
    acl subscribePattern "$prefix/reply/$user/#"
    acl subscribePattern "$prefix/svc/+"
    if [ -n "$identity" ]; then
        acl publishClientSend "$prefix/svc/$user"
        acl publishClientSend "$prefix/svc/$user%23sync"
        acl subscribePattern "$prefix/evt/#"
        acl subscribePattern "\$share/+/$prefix/evt/#"
    fi
    for c in $call_words; do
        if [ "$c" = '*' ]; then acl publishClientSend "$prefix/cmd/#"; else acl publishClientSend "$prefix/cmd/$c/#"; fi
    done
    for s in $svc_words; do
        acl subscribePattern "$prefix/cmd/$s/#"
        acl subscribePattern "\$share/+/$prefix/cmd/$s/#"
        acl publishClientSend "$prefix/evt/+/$s/#"
    done
    [ -z "$svc_words" ] || acl publishClientSend "$prefix/reply/#"
    roles="${roles:+$roles,
}    {\"rolename\": \"$user\", \"acls\": [$acls]}"

    # nats-server: the same rights on subjects
    pub="\"$prefix.svc.$user\""
    [ -n "$identity" ] || pub=""
    for c in $call_words; do
        if [ "$c" = '*' ]; then p="\"$prefix.cmd.>\""; else p="\"$prefix.cmd.$c.>\""; fi
        pub="${pub:+$pub, }$p"
    done
    sub="\"$prefix.reply.$user\", \"$prefix.reply.$user.>\", \"$prefix.svc.*\", \"$prefix.evt.>\", \"_INBOX.>\""
    for s in $svc_words; do
        pub="${pub:+$pub, }\"$prefix.evt.*.$s.>\""
        sub="$sub, \"$prefix.cmd.$s.>\""
    done
    [ -z "$svc_words" ] || pub="$pub, \"$prefix.reply.>\", \"_INBOX.>\""
    if [ -n "$pub" ]; then pubs="[$pub]"; else pubs='{deny: [">"]}'; fi
    nats_users="$nats_users
    {user: \"$user\", password: \"$pass\",
     permissions: {publish: $pubs, subscribe: [$sub]}}"

    # the process's loom configuration
    {
        echo "instance: $user"
        echo "broker:"
        echo "  username: $user"
        echo "  password_file: $dir/$user.password"
        if [ -n "$identity" ]; then
            echo "security:"
            echo "  signing: true"
            echo "  key_file: $dir/keys/$identity.key"
            echo "  keyring: $dir/keyring"
            echo "  bare_calls: true"
        fi
    } >"$dir/$user.yaml"
done

# The password hashes mosquitto_passwd makes ($7$ITERATIONS$SALT$HASH,
# PBKDF2-SHA512) are the ones the dynamic security plugin stores.
mosquitto_passwd -U "$dir/passwd"
clients=""
while IFS=: read -r user hash; do
    iterations=$(echo "$hash" | cut -d'$' -f3)
    salt=$(echo "$hash" | cut -d'$' -f4)
    key=$(echo "$hash" | cut -d'$' -f5)
    clients="${clients:+$clients,
}    {\"username\": \"$user\", \"password\": \"$key\", \"salt\": \"$salt\", \"iterations\": $iterations, \"roles\": [{\"rolename\": \"$user\"}]}"
done <"$dir/passwd"
cat >"$dir/dynsec.json" <<EOF
{
  "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true,
                       "subscribe": false, "unsubscribe": true},
  "clients": [
$clients
  ],
  "groups": [],
  "roles": [
$roles
  ]
}
EOF
printf 'authorization {\n  users = [%s\n  ]\n}\n' "$nats_users" >"$dir/nats-auth.conf"
plugin=${MOSQUITTO_DYNSEC:-/usr/lib/$(uname -m)-linux-gnu/mosquitto_dynamic_security.so}
cat >"$dir/mosquitto-auth.conf" <<EOF
allow_anonymous false
use_username_as_clientid true
plugin $plugin
plugin_opt_config_file $dir/dynsec.json
EOF
