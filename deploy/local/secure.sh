# shellcheck shell=bash
# Secure single-node mode of deploy/local/kafka (`up --secure`, `grant`); sourced by that script,
# which provides port, base, lib, secure, say, die, load_cluster, broker_port, controller_port.
#
# Listeners: SASL_SSL (SCRAM-SHA-512) on KAFKA_PORT, MTLS (SSL, client cert required) on
# KAFKA_PORT+1, CONTROLLER (SSL, client cert required) on KAFKA_PORT+1000. The broker authenticates
# to its own controller and to itself (inter-broker: transaction markers) with its certificate
# (CN=broker), so User:broker is a super user; so is User:admin, the operator (SCRAM).

secure_principals=(tally admin stranger) # SCRAM users, all with random passwords
mtls_port() { echo $((port + 1)); }
secure_dir() { echo "$(cd "$base" && pwd)/secure"; }

# Appended to server.properties instead of the PLAINTEXT listener settings.
secure_properties() {
  local sd
  sd=$(secure_dir)
  cat <<EOF
listeners=SASL_SSL://127.0.0.1:$(broker_port 1),MTLS://127.0.0.1:$(mtls_port),CONTROLLER://127.0.0.1:$(controller_port 1)
advertised.listeners=SASL_SSL://127.0.0.1:$(broker_port 1),MTLS://127.0.0.1:$(mtls_port)
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL
inter.broker.listener.name=MTLS
ssl.keystore.type=PEM
ssl.keystore.location=$sd/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$sd/ca.pem
listener.name.mtls.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:broker;User:admin
EOF
}

# StorageTool format arguments that create the SCRAM users.
secure_format_args() {
  local who sd
  sd=$(secure_dir)
  for who in "${secure_principals[@]}"; do
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$who,password=$(cat "$sd/$who.password")]"
  done
}

# Creates $base/secure once per cluster: CAs, certificates, passwords and client settings.
secure_init() {
  local sd
  mkdir -p "$base"
  sd=$(secure_dir)
  [[ -f $sd/.complete ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH (apt-get install openssl)"
  rm -rf "$sd"
  mkdir -p "$sd"
  chmod 700 "$sd"
  # In the background so that errexit holds in the subshell (it would not left of a ||).
  (cd "$sd" && umask 077 && secure_generate "$sd") >"$base/secure.log" 2>&1 &
  wait $! || { cat "$base/secure.log" >&2; die "creating certificates in $sd failed"; }
  rm -f "$base/secure.log"
  touch "$sd/.complete"
}

cert() { # ca name cn extendedKeyUsage [extension...]: EC P-256 key name.key, name.crt signed by ca
  local ca=$1 name=$2 cn=$3 eku=$4 ext=() e
  shift 4
  for e in basicConstraints=CA:FALSE "extendedKeyUsage=$eku" "$@"; do ext+=(-addext "$e"); done
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 825 \
    -keyout "$name.key" -out "$name.crt" -subj "/CN=$cn" -CA "$ca.pem" -CAkey "$ca.key" "${ext[@]}"
  cat "$name.key" "$name.crt" >"$name.pem" # key + chain: a PEM keystore for Java clients
}

secure_generate() { # secure_dir (the current directory)
  local sd=$1 ca who
  for ca in ca untrusted-ca; do
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 3650 \
      -keyout "$ca.key" -out "$ca.pem" -subj "/CN=tally-local-$ca" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  done
  cert ca broker broker serverAuth,clientAuth subjectAltName=IP:127.0.0.1,DNS:localhost
  cert ca tally tally clientAuth
  cert ca stranger stranger clientAuth
  cert untrusted-ca untrusted tally clientAuth # CN=tally, but from a CA the broker does not trust
  # tally's key is encrypted, so that clients exercise ssl.key.password: tally.key (librdkafka) with
  # PBES2/AES-256; tally.pem (Java) with PBE-SHA1-3DES, as Java 17 cannot decrypt PBES2 keys.
  openssl rand -hex 16 >tally.key.password
  openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES -in tally.key -passout file:tally.key.password -out tally.pem
  cat tally.crt >>tally.pem
  openssl pkcs8 -topk8 -v2 aes-256-cbc -in tally.key -passout file:tally.key.password -out tally.key.enc
  mv tally.key.enc tally.key
  for who in "${secure_principals[@]}"; do openssl rand -hex 16 >"$who.password"; done
  for who in tally admin stranger; do client_settings "$sd" "$who" sasl; done
  for who in tally stranger untrusted; do client_settings "$sd" "$who" mtls; done
  cp admin-sasl.properties admin.properties
  echo "127.0.0.1:$(broker_port 1)" >bootstrap-sasl
  echo "127.0.0.1:$(mtls_port)" >bootstrap-mtls
  chmod 600 ./*
}

# Writes who-kind.toml (librdkafka settings: a TOML table body for [kafka]) and who-kind.properties
# (Java client settings, for --command-config and the like).
client_settings() { # secure_dir who sasl|mtls
  local sd=$1 who=$2 kind=$3 keypw=""
  [[ -f $sd/$who.key.password ]] && keypw=$(cat "$sd/$who.key.password")
  if [[ $kind == sasl ]]; then
    printf '"%s" = "%s"\n' security.protocol SASL_SSL sasl.mechanisms SCRAM-SHA-512 \
      sasl.username "$who" sasl.password "$(cat "$sd/$who.password")" ssl.ca.location "$sd/ca.pem" >"$who-sasl.toml"
    printf '%s\n' security.protocol=SASL_SSL sasl.mechanism=SCRAM-SHA-512 \
      "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$who\" password=\"$(cat "$sd/$who.password")\";" \
      ssl.truststore.type=PEM "ssl.truststore.location=$sd/ca.pem" >"$who-sasl.properties"
  else
    {
      printf '"%s" = "%s"\n' security.protocol SSL ssl.ca.location "$sd/ca.pem" \
        ssl.certificate.location "$sd/$who.crt" ssl.key.location "$sd/$who.key"
      [[ -z $keypw ]] || printf '"ssl.key.password" = "%s"\n' "$keypw"
    } >"$who-mtls.toml"
    {
      printf '%s\n' security.protocol=SSL ssl.truststore.type=PEM "ssl.truststore.location=$sd/ca.pem" \
        ssl.keystore.type=PEM "ssl.keystore.location=$sd/$who.pem"
      [[ -z $keypw ]] || echo "ssl.key.password=$keypw"
    } >"$who-mtls.properties"
  fi
}

# grant: the ACLs a tally application needs, added with Kafka's AclCommand as User:admin.
# AclCommand takes one pattern type and one operation list (valid for every resource type named)
# per call, so grant needs five calls; they run as parallel JVMs. Adding an ACL that exists is a
# no-op for the broker (AclCommand still says "Adding"), so grant is idempotent.
cmd_grant() {
  local principal="" app="" inputs=() outputs=() sd pids=() i fail=0 jsa tmp cds=()
  local pre=(--resource-pattern-type PREFIXED)
  while (($#)); do
    [[ $# -ge 2 ]] || die "$1 needs a value"
    [[ $1 == --principal || $2 =~ ^[A-Za-z0-9._-]+$ ]] || die "$1: not a valid topic or group name: '$2'"
    case $1 in
      --principal) principal=$2 ;;
      --app) app=$2 ;;
      --input) inputs+=(--topic "$2") ;;
      --output | --dead-letter) outputs+=(--topic "$2") ;;
      *) die "unknown argument: $1 (usage: grant --principal User:NAME --app APPLICATION_ID --input TOPIC... [--output TOPIC...] [--dead-letter TOPIC...])" ;;
    esac
    shift 2
  done
  [[ $principal == User:?* ]] || die "grant needs --principal User:NAME (got '$principal')"
  [[ -n $app ]] || die "grant needs --app APPLICATION_ID"
  ((${#inputs[@]})) || die "grant needs at least one --input TOPIC"
  load_cluster
  [[ ${cluster_security:-} == secure ]] || die "no secure cluster in $base (run 'up --secure' first)"
  port_open "$(broker_port 1)" || die "the broker does not serve on 127.0.0.1:$(broker_port 1) (see 'status')"
  need_java
  ensure_jars
  sd=$(secure_dir)
  tmp=$(mktemp -d "$base/grant.XXXXXX")
  # A class-data archive of AclCommand's classes, written by the first grant (per JDK, and dropped
  # with target/lib when the jars change), cuts each JVM's start-up CPU by about 40%.
  jsa="$lib/.aclcommand-$(readlink -f "$(command -v java)" | cksum | cut -d' ' -f1).jsa"
  if [[ -f $jsa ]]; then cds=(-XX:SharedArchiveFile="$jsa"); else cds=(-XX:ArchiveClassesAtExit="$tmp/jsa"); fi
  acl() { # AclCommand --add for $principal with the given resources and operations
    java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xlog:disable "${cds[@]}" -cp "$lib/*" \
      org.apache.kafka.tools.AclCommand --bootstrap-server "$(cat "$sd/bootstrap-sasl")" \
      --command-config "$sd/admin.properties" --add --allow-principal "$principal" "$@"
  }
  # Inputs: READ, DESCRIBE (never WRITE); outputs and dead letters: also CREATE, DESCRIBE_CONFIGS,
  # WRITE; the consumer group APPLICATION_ID: READ, DESCRIBE.
  acl --operation Read --operation Describe "${inputs[@]}" "${outputs[@]}" --group "$app" >"$tmp/1" 2>&1 &
  pids+=($!)
  [[ -f $jsa ]] || cds=() # only the first call writes the archive
  if ((${#outputs[@]})); then
    acl --operation Create --operation DescribeConfigs --operation Write "${outputs[@]}" >"$tmp/2" 2>&1 &
    pids+=($!)
  fi
  # Everything derived from the application id: topics (changelogs, control, evidence), groups
  # and transactional ids, all PREFIXED "APPLICATION_ID-".
  acl "${pre[@]}" --operation Read --operation Describe --topic "$app-" --group "$app-" >"$tmp/3" 2>&1 &
  pids+=($!)
  acl "${pre[@]}" --operation Write --operation Describe --topic "$app-" --transactional-id "$app-" >"$tmp/4" 2>&1 &
  pids+=($!)
  acl "${pre[@]}" --operation Create --operation DescribeConfigs --topic "$app-" >"$tmp/5" 2>&1 &
  pids+=($!)
  for i in "${pids[@]}"; do wait "$i" || fail=1; done
  if ((fail)); then
    cat "$tmp"/[0-9] >&2
    rm -rf "$tmp"
    die "AclCommand failed"
  fi
  [[ ! -f $tmp/jsa ]] || mv -f "$tmp/jsa" "$jsa" 2>/dev/null || true
  # One line per resource, e.g. "TOPIC demoapp.in LITERAL: READ DESCRIBE".
  cat "$tmp"/[0-9] | awk '/^Adding ACLs/ { if (l) print l; match($0, /resourceType=.*patternType=[A-Z]*/)
      l = "  " substr($0, RSTART, RLENGTH) ":"; gsub(/(resourceType|name|patternType)=|,/, "", l) }
    /operation=/ { match($0, /operation=[A-Z_]*/); l = l " " substr($0, RSTART + 10, RLENGTH - 10) }
    END { if (l) print l }' >&2
  rm -rf "$tmp"
  say "granted $principal the ACLs of application '$app'"
}
