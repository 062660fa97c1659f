// SPDX-License-Identifier: GPL-2.0
/* The provider of a dependent pair: exports a symbol kmpack_pair_b imports, so depmod records
 * that b needs a and modprobe loads a first. Imports only long-stable symbols. */
#include <linux/module.h>
#include <linux/init.h>

int kmpack_pair_value(void)
{
	return 4242;
}
EXPORT_SYMBOL_GPL(kmpack_pair_value);

static int __init pair_a_init(void)
{
	pr_info("kmpack-pair: a loaded\n");
	return 0;
}

static void __exit pair_a_exit(void)
{
}

module_init(pair_a_init);
module_exit(pair_a_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmpack test module exporting a symbol to kmpack_pair_b");
