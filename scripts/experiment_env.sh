# Sourced by the experiment scripts: set up .venv, then point the loaders at the local
# data copies (../shared/data) unless BSLORA_DATA_DIR is set; else they read the HF hub.
bash scripts/setup_env.sh
if [ -z "${BSLORA_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export BSLORA_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export TOKENIZERS_PARALLELISM=false
