module.exports.handler = async () => ({ from: "lib/nested" });
