// SPDX-License-Identifier: GPL-2.0-only
/* Built by kmpack against a kernel devel tree to learn the size of that kernel's struct module
 * (the module's .gnu.linkonce.this_module section); never loaded. */
#include <linux/module.h>
MODULE_LICENSE("GPL");
