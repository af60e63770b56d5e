# Shared by demo.sh and test.sh: install everything, bring the dev cluster up, load its env.
# shellcheck shell=bash
bring_up() {  # bring_up [dev-cluster up options], e.g. --nodes 3
  bash "$here/scripts/setup.sh"
  bash "$here/scripts/dev-cluster.sh" up "$@"
  eval "$(bash "$here/scripts/dev-cluster.sh" env)"
}
