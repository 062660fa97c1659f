// SPDX-License-Identifier: GPL-2.0
/* A module that imports only long-stable symbols (_printk, module_layout), so one build loads
 * in every sibling kernel of the same flavor. Its parameter shows up in the log it prints. */
#include <linux/module.h>
#include <linux/init.h>

static int greeting = 42;
module_param(greeting, int, 0444);
MODULE_PARM_DESC(greeting, "number printed when the module loads");

static int __init hello_init(void)
{
	pr_info("kmpack-hello: loaded, greeting=%d\n", greeting);
	return 0;
}

static void __exit hello_exit(void)
{
	pr_info("kmpack-hello: unloaded\n");
}

module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmpack test module importing only stable symbols");
MODULE_VERSION("1.0");
