// SPDX-License-Identifier: GPL-2.0-only
/*
 * kmpack_abi: a test module that imports _dev_info, whose modversions CRC differs between
 * Debian's 6.1.0-53 and 6.1.0-54 kernels (struct device changed), so a build for one is not
 * loadable in the other and its packages' symbol dependencies must say so.
 */
#include <linux/module.h>
#include <linux/device.h>

static bool verbose;
module_param(verbose, bool, 0444);
MODULE_PARM_DESC(verbose, "also log through dev_info");

static int __init kmpack_abi_init(void)
{
	pr_info("kmpack_abi: loaded\n");
	if (verbose)
		dev_info(NULL, "kmpack_abi: verbose\n");
	return 0;
}

static void __exit kmpack_abi_exit(void)
{
	pr_info("kmpack_abi: unloaded\n");
}

module_init(kmpack_abi_init);
module_exit(kmpack_abi_exit);
MODULE_DESCRIPTION("kmpack test module whose imports changed between two kernel ABIs");
MODULE_LICENSE("GPL");
MODULE_ALIAS("pci:v00001234d00005678sv*sd*bc*sc*i*");
MODULE_ALIAS("pci:v00001234d00005679sv*sd*bc*sc*i*");
