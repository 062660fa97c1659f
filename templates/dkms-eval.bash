# kmpack: evaluate one dkms.conf as dkms's read_conf/safe_source do, for one target kernel.
# Usage: bash -c "$DKMSEval" kmpack-dkms-eval CONF   (variables come in as KMPACK_DKMS_* env)
# Output, on fd 3: NAME NUL INDEX NUL VALUE NUL, for each index of each dkms.conf directive.

# dkms's VER (dkms.in): pads numeric runs to three digits so versions compare as strings.
# Kept verbatim because real dkms.conf files call it.
VER() {
    echo $1 | sed -e 's:\([^0-9]\)\([0-9]\):\1 \2:g' \
        -e 's:\([0-9]\)\([^0-9]\):\1 \2:g' \
        -e 's:\(.*\): \1 :' \
        -e 's: \([0-9]\) : 00\1 :g' \
        -e 's: \([0-9][0-9]\) : 0\1 :g' \
        -e 's: ::g'
}

# The variables dkms has set while it sources dkms.conf (read_conf runs inside dkms's own shell).
# They are shell variables, not exported, exactly as in dkms.
kernelver=$KMPACK_DKMS_kernelver
arch=$KMPACK_DKMS_arch
kernel_source_dir=$KMPACK_DKMS_kernel_source_dir
kernel_config=$KMPACK_DKMS_kernel_config
dkms_tree=$KMPACK_DKMS_dkms_tree
source_tree=$KMPACK_DKMS_source_tree
install_tree=$KMPACK_DKMS_install_tree
module=$KMPACK_DKMS_module
module_version=$KMPACK_DKMS_module_version
parallel_jobs=$KMPACK_DKMS_parallel_jobs
running_distribution=$KMPACK_DKMS_running_distribution
_kmpack_vars=$KMPACK_DKMS_VARS
_kmpack_conf=$1
unset KMPACK_DKMS_kernelver KMPACK_DKMS_arch KMPACK_DKMS_kernel_source_dir KMPACK_DKMS_kernel_config \
    KMPACK_DKMS_dkms_tree KMPACK_DKMS_source_tree KMPACK_DKMS_install_tree KMPACK_DKMS_module \
    KMPACK_DKMS_module_version KMPACK_DKMS_parallel_jobs KMPACK_DKMS_running_distribution KMPACK_DKMS_VARS
unset CC CXX CFLAGS CXXFLAGS LDFLAGS
umask 022
for _kmpack_v in $_kmpack_vars; do unset "$_kmpack_v"; done

(
    . "$_kmpack_conf" >/dev/null
    for _kmpack_v in $_kmpack_vars; do
        eval "_kmpack_idx=(\"\${!${_kmpack_v}[@]}\")"
        for _kmpack_i in "${_kmpack_idx[@]}"; do
            eval "_kmpack_val=\${${_kmpack_v}[\$_kmpack_i]}"
            printf '%s\0%s\0%s\0' "$_kmpack_v" "$_kmpack_i" "${_kmpack_val%$'\r'}" >&3
        done
    done
)
