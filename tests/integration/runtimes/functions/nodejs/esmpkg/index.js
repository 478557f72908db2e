export const handler = async () => ({ module: "esm-package" });
