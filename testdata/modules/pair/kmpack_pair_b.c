// SPDX-License-Identifier: GPL-2.0
/* The consumer of a dependent pair: uses the symbol kmpack_pair_a exports. */
#include <linux/module.h>
#include <linux/init.h>

int kmpack_pair_value(void);

static int __init pair_b_init(void)
{
	pr_info("kmpack-pair: b loaded, value from a=%d\n", kmpack_pair_value());
	return 0;
}

static void __exit pair_b_exit(void)
{
}

module_init(pair_b_init);
module_exit(pair_b_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmpack test module using a symbol of kmpack_pair_a");
